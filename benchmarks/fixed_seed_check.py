"""Fixed-seed check: a short, tiny run of every registered online algorithm, reduced to a hash of
its logged metrics, its evaluation return and a hash of its final weights.

Run it on two trees and compare the tables: a pure refactor must leave every row identical.

    PYTHONPATH=TREE OMP_NUM_THREADS=1 python benchmarks/fixed_seed_check.py --out rows.json [--only NAME ...]

Timings, wall-clock fields and paths are left out of the metric hash (they differ between any two
runs); everything else the loop logs (losses, returns, gradient norms, planner statistics) is in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from wmlab.agents.diamond.config import DiamondConfig
from wmlab.agents.dreamer.config import DreamerConfig, DreamerV1Config, DreamerV2Config, at_size
from wmlab.agents.dyna.config import Dyna2Config, DynaConfig
from wmlab.agents.imagination.config import ACTOR_CRITIC_OPTIMIZER, ImaginationConfig
from wmlab.agents.iris.config import IrisConfig
from wmlab.agents.mpc.config import MPCConfig
from wmlab.agents.planet.config import PlaNetConfig
from wmlab.agents.tdmpc2.config import TDMPC2Config
from wmlab.models.diffusion import DiffusionConfig, RewardEndConfig
from wmlab.models.mlp import MLPWorldModelConfig
from wmlab.models.tdmpc import TDMPCModelConfig, TDMPCSizes
from wmlab.models.tokens import SIZES as TOKEN_SIZES
from wmlab.models.tokens import TokenWorldModelConfig
from wmlab.planners.cem import CEMConfig
from wmlab.planners.mppi import MPPIConfig
from wmlab.planners.shooting import RandomShootingConfig
from wmlab.runs.config import TrainConfig
from wmlab.runs.directory import RunSpec
from wmlab.train.loop import Trainer

#: Logged keys that measure time, not behaviour.
VOLATILE = ("time", "fps", "seconds", "per_second", "sps", "duration", "elapsed", "wall")

STATE = {"observation": "state", "max_episode_steps": 25, "reward": "dense"}


def tiny_dreamer(config: DreamerConfig, **changes) -> DreamerConfig:
    reward_bins = 31 if config.model.reward_head == "twohot" else config.model.reward_bins
    tiny = at_size(config, "tiny", stochastic_size=4, reward_bins=reward_bins)
    return dataclasses.replace(tiny, imagination_horizon=4, random_steps=50, open_loop_report=False, **changes)


def tiny_planet(**changes) -> PlaNetConfig:
    model = PlaNetConfig().model
    sizes = dataclasses.replace(model.size, deterministic_size=16, hidden_size=16, units=16, cnn_depth=4)
    model = dataclasses.replace(model, size=sizes, stochastic_size=4)
    planner = CEMConfig(horizon=4, iterations=2, candidates=32, elites=4)
    return PlaNetConfig(model=model, planner=planner, random_steps=50, open_loop_report=False, **changes)


def tiny_mpc(**changes) -> MPCConfig:
    model = MLPWorldModelConfig()
    fields = {field.name for field in dataclasses.fields(model)}
    widths = {name: 16 for name in ("hidden_size", "units", "width") if name in fields}
    return MPCConfig(
        model=dataclasses.replace(model, **widths),
        planner=RandomShootingConfig(horizon=4, candidates=32),
        random_steps=50,
        **changes,
    )


def tiny_tdmpc2() -> TDMPC2Config:
    sizes = TDMPCSizes(encoder_width=16, mlp_width=16, latent_size=8, encoder_layers=1, q_functions=2)
    model = TDMPCModelConfig(size=sizes, bins=31, discount=0.9)
    planner = MPPIConfig(horizon=3, samples=32, elites=4, iterations=2, policy_trajectories=4)
    return TDMPC2Config(model=model, planner=planner, random_steps=50)


def tiny_iris() -> IrisConfig:
    return IrisConfig(
        model=TokenWorldModelConfig(size=TOKEN_SIZES["tiny"], stages=2),
        learner=ImaginationConfig(
            channels=(4, 4),
            encoder="plain",  # as when the reference values were recorded
            diamond_lstm_init=False,
            lstm_size=16,
            horizon=3,
            burn_in=2,
            starts=2,
            optimizer=dataclasses.replace(ACTOR_CRITIC_OPTIMIZER, warmup=0),
        ),
        tokenizer_frames=8,
        world_model_starts=1,
        actor_critic_starts=2,
        open_loop_report=False,
    )


def tiny_diamond() -> DiamondConfig:
    model = DiffusionConfig(
        channels=(8, 8),
        depths=(1, 1),
        condition_size=16,
        context=2,
        middle_blocks=0,  # as when the reference values were recorded
        skip_every_block=False,
        action_projection=True,
        reward_end=RewardEndConfig(
            channels=(4, 4), depths=(1, 1), condition_size=8, lstm_size=16, middle_blocks=0, diamond_lstm_init=False
        ),
    )
    learner = ImaginationConfig(
        channels=(4, 4), encoder="plain", diamond_lstm_init=False, lstm_size=16, horizon=3, starts=2, burn_in=2
    )
    paper = DiamondConfig()
    return DiamondConfig(
        model=model,
        learner=learner,
        # decay on every parameter, as when the reference values were recorded
        denoiser_optimizer=dataclasses.replace(paper.denoiser_optimizer, decay="all"),
        reward_end_optimizer=dataclasses.replace(paper.reward_end_optimizer, decay="all"),
        actor_critic_starts=1,
        open_loop_report=False,
    )


REPLAY = dict(learning_starts=50, batch_size=4, sequence_length=8, train_ratio=8.0)
PIXELS16 = {"image_size": 16, "max_episode_steps": 15, "reward": "dense"}

#: name -> (algorithm, environment, environment kwargs, agent config, training settings).
CASES = {
    "dreamer-v1 (state, Box)": ("dreamer-v1", "two-rooms", STATE, tiny_dreamer(DreamerV1Config()), REPLAY),
    "dreamer-v2 (state, Box)": ("dreamer-v2", "two-rooms", STATE, tiny_dreamer(DreamerV2Config()), REPLAY),
    "dreamer-v3 (state, Box)": ("dreamer-v3", "two-rooms", STATE, tiny_dreamer(DreamerConfig()), REPLAY),
    "dreamer-v3 (pixels 16, Discrete)": (
        "dreamer-v3",
        "two-rooms-discrete",
        PIXELS16,
        tiny_dreamer(DreamerConfig()),
        REPLAY,
    ),
    "dreamer-v3 + counterfactual resample + horizon confidence": (
        "dreamer-v3",
        "two-rooms",
        STATE,
        tiny_dreamer(DreamerConfig(), counterfactual_fraction=0.5, horizon_confidence=0.9),
        REPLAY,
    ),
    "dreamer-v3 + counterfactual swap": (
        "dreamer-v3",
        "two-rooms",
        STATE,
        tiny_dreamer(DreamerConfig(), counterfactual_fraction=0.5, counterfactual_kind="swap"),
        REPLAY,
    ),
    "planet (state, Box)": ("planet", "two-rooms", STATE, tiny_planet(), REPLAY),
    "planet (pixels 16, Discrete)": ("planet", "two-rooms-discrete", PIXELS16, tiny_planet(), REPLAY),
    "mpc (state, Box, noise 0)": ("mpc", "two-rooms", STATE, tiny_mpc(), REPLAY),
    "mpc (state, Box, noise 0.2)": ("mpc", "two-rooms", STATE, tiny_mpc(exploration_noise=0.2), REPLAY),
    "tdmpc2 (state, Box)": ("tdmpc2", "two-rooms", STATE, tiny_tdmpc2(), REPLAY),
    "dyna-q": ("dyna-q", "dyna-maze", {}, DynaConfig(), {}),
    "dyna-q-plus": ("dyna-q-plus", "dyna-maze", {}, DynaConfig(), {}),
    "prioritized-sweeping": ("prioritized-sweeping", "dyna-maze", {}, DynaConfig(), {}),
    "trajectory-sampling": ("trajectory-sampling", "dyna-maze", {}, DynaConfig(), {}),
    "dyna-2": ("dyna-2", "dyna-maze", {}, Dyna2Config(), {}),
    "iris-cpu (pixels 16)": (
        "iris-cpu",
        "two-rooms-discrete",
        PIXELS16,
        tiny_iris(),
        dict(learning_starts=10, batch_size=2, sequence_length=4, train_ratio=10.0),
    ),
    "diamond-cpu (pixels 8)": (
        "diamond-cpu",
        "two-rooms-discrete",
        {**PIXELS16, "image_size": 8},
        tiny_diamond(),
        dict(learning_starts=10, batch_size=2, sequence_length=4, train_ratio=10.0),
    ),
}

STEPS = {"iris-cpu (pixels 16)": 60, "diamond-cpu (pixels 8)": 60}


def stable(record: dict) -> dict:
    return {key: value for key, value in record.items() if not any(word in key for word in VOLATILE)}


def weights_hash(run_dir: Path) -> str:
    """A hash of the final checkpoint's tensors (weights, optimiser moments, random states, replay)
    that ignores their names (a renamed key is not a change of behaviour): the sorted digests of
    every tensor's bytes."""
    digests = []
    for path in sorted(run_dir.rglob("*.safetensors")):
        for key, tensor in load_file(str(path)).items():
            if "/plan_" in key:  # the planners' pending statistics, not weights
                continue
            digests.append(hashlib.sha256(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()[:12]


def run_case(name: str, steps: int, root: Path) -> dict:
    algorithm, env, env_kwargs, agent, replay = CASES[name]
    settings = dict(
        steps=STEPS.get(name, steps),
        eval_every=0,
        eval_episodes=2,
        log_every=50,
        checkpoint_every=10**9,
        threads=1,
        progress=False,
        tensorboard=False,
        seed=3,
    )
    settings.update(replay)
    spec = RunSpec(algorithm, env, train=TrainConfig(**settings), agent=agent, env_kwargs=env_kwargs)
    run_dir = root / name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("+", "")
    started = time.perf_counter()
    summary = Trainer(spec, run_dir).run()
    seconds = time.perf_counter() - started
    records = [stable(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    metrics_hash = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()[:12]
    # The same without the planners' own statistics (`plan/...`), which an agent may begin to log.
    unplanned = [{key: value for key, value in record.items() if not key.startswith("plan/")} for record in records]
    unplanned_hash = hashlib.sha256(json.dumps(unplanned, sort_keys=True).encode()).hexdigest()[:12]
    trained = [record for record in records if any(key.startswith("loss/") for key in record)]
    losses = {key: value for key, value in (trained[-1] if trained else {}).items() if key.startswith("loss/")}
    return {
        "case": name,
        "steps": settings["steps"],
        "eval_return": summary.get("eval/return"),
        "metrics_hash": metrics_hash,
        "metrics_hash_without_plan": unplanned_hash,
        "records": len(records),
        "weights_hash": weights_hash(run_dir),
        "last_losses": losses,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", nargs="*", default=None, help="case names (substrings) to run")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    names = [name for name in CASES if not arguments.only or any(part in name for part in arguments.only)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            row = run_case(name, arguments.steps, Path(scratch))
            rows.append(row)
            print(json.dumps(row), flush=True)
            arguments.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

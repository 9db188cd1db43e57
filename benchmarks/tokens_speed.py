"""Speed of the token world model (IRIS) on the CPU: imagination with and without the key-value
cache, and one training update beside dreamer-cpu's.

    OMP_NUM_THREADS=1 python benchmarks/tokens_speed.py imagine --size cpu --batch 8 --horizon 10 --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/tokens_speed.py step --size cpu --batch 1 --horizon 30 --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/tokens_speed.py update --size cpu --batch 16 --length 10
    OMP_NUM_THREADS=1 python benchmarks/tokens_speed.py actor-critic --starts 8 32 64 --length 10 --rounds 3

`imagine`: from a state filtered on 5 real-shaped (random) 64 x 64 frames, imagine `horizon`
steps of K = 16 tokens; the cached and the uncached (whole window recomputed per token) runs
alternate for `rounds` rounds in one process, and the medians give tokens per second and their
ratio. `step`: a stepper's imagine(horizon=1) calls with the cache carried in the state, rebuilt
at every call, or absent. `update`: one update (loss, backward, Adam step) of the token model on a B x T batch,
alternating with one `dreamer-cpu` update (world model + actor + critic) on B x `dreamer-length`
frames of the same kind. `actor-critic`: one `iris-cpu` actor-critic update (burn-in, 20 imagined
steps of 16 tokens, lambda-returns, backward) from each number of `--starts`, the counts
alternating in every round, on random 16 x 16 frames (MinAtar's size in the laptop rows) with an
untrained model (the cost does not depend on the weights). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from gymnasium import spaces

from wmlab.core.types import Batch
from wmlab.models.tokens import SIZES, TokenWorldModel, TokenWorldModelConfig

IMAGES = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})


def random_batch(B: int, T: int, actions: spaces.Space, seed: int = 0, size: int = 64) -> Batch:
    rng = np.random.default_rng(seed)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    if isinstance(actions, spaces.Discrete):
        action = rng.integers(0, actions.n, (B, T))
    else:
        action = rng.uniform(-1, 1, (B, T, *actions.shape)).astype(np.float32)
    return Batch(
        {"image": rng.integers(0, 256, (B, T, size, size, 3), dtype=np.uint8)},
        action,
        rng.normal(size=(B, T)).astype(np.float32),
        is_first,
        np.zeros((B, T), bool),
        np.zeros((B, T), bool),
    )


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def filtered_model(arguments) -> tuple[TokenWorldModel, dict, np.ndarray, int]:
    """(the model, its state after 5 random frames, actions (B, horizon), tokens per rollout)."""
    torch.manual_seed(arguments.seed)
    model = TokenWorldModel(TokenWorldModelConfig(size=SIZES[arguments.size]), IMAGES, spaces.Discrete(4)).eval()
    batch = random_batch(arguments.batch, 5, spaces.Discrete(4), arguments.seed)
    _, last = model.observe(batch.obs, batch.action, batch.is_first)
    actions = np.random.default_rng(arguments.seed).integers(0, 4, (arguments.batch, arguments.horizon))
    return model, last, actions, arguments.batch * arguments.horizon * model.tokens_per_frame


def imagine(arguments) -> dict:
    model, last, actions, tokens = filtered_model(arguments)
    model.imagine(last, actions[:, :1], 1)  # warm-up
    times = {True: [], False: []}
    for _ in range(arguments.rounds):
        for use_cache in (True, False):
            times[use_cache].append(timed(lambda: model.imagine(last, actions, arguments.horizon, use_cache=use_cache)))
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    return {
        "size": arguments.size,
        "batch": arguments.batch,
        "horizon": arguments.horizon,
        "context_steps": model.context,
        "tokens_per_rollout": tokens,
        "rounds": arguments.rounds,
        "parameters": sum(p.numel() for p in model.parameters()),
        "cached_tokens_per_second": round(tokens / cached, 1),
        "uncached_tokens_per_second": round(tokens / uncached, 1),
        "speedup_median": round(uncached / cached, 2),
        "cached_seconds": [round(t, 3) for t in times[True]],
        "uncached_seconds": [round(t, 3) for t in times[False]],
    }


def step(arguments) -> dict:
    """A stepper's path (ImaginedEnv, the play page): `horizon` calls of imagine(horizon=1), each
    from the state the last returned. Alternates three ways per round: the key-value cache carried
    in the state ("carried"), the cache dropped between calls so each call rebuilds its window
    ("rebuilt", the behaviour before the cache travelled in the state), and no cache at all."""
    from wmlab.models.tokens import CACHE_KEYS

    model, last, actions, tokens = filtered_model(arguments)

    def run(mode: str) -> None:
        state = last
        for index in range(arguments.horizon):
            trajectory = model.imagine(state, actions[:, index : index + 1], 1, use_cache=mode != "uncached")
            state = {name: value[:, -1] for name, value in trajectory.states.items()}
            if mode == "rebuilt":
                state = {name: value for name, value in state.items() if name not in CACHE_KEYS}

    run("carried")  # warm-up
    modes = ("carried", "rebuilt", "uncached")
    times = {mode: [] for mode in modes}
    for _ in range(arguments.rounds):
        for mode in modes:
            times[mode].append(timed(lambda: run(mode)))
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    return {
        "size": arguments.size,
        "batch": arguments.batch,
        "calls": arguments.horizon,
        "context_steps": model.context,
        "tokens_per_frame": model.tokens_per_frame,
        "rounds": arguments.rounds,
        **{f"{mode}_tokens_per_second": round(tokens / medians[mode], 1) for mode in modes},
        **{f"{mode}_ms_per_step": round(1000 * medians[mode] / arguments.horizon, 1) for mode in modes},
        "carried_over_rebuilt": round(medians["rebuilt"] / medians["carried"], 2),
        "carried_over_uncached": round(medians["uncached"] / medians["carried"], 2),
        "median_of_round_ratios_rebuilt": round(
            statistics.median(r / c for r, c in zip(times["rebuilt"], times["carried"])), 2
        ),
        **{f"{mode}_seconds": [round(t, 3) for t in values] for mode, values in times.items()},
    }


def update(arguments) -> dict:
    from wmlab.agents.dreamer.agent import DreamerAgent
    from wmlab.agents.dreamer.config import DreamerCPUConfig

    torch.manual_seed(arguments.seed)
    model = TokenWorldModel(TokenWorldModelConfig(size=SIZES[arguments.size]), IMAGES, spaces.Discrete(4)).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)  # IRIS: Adam(W) 1e-4
    batch = random_batch(arguments.batch, arguments.length, spaces.Discrete(4), arguments.seed)

    def token_update():
        loss, _ = model.loss_terms(batch)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)  # IRIS: max grad norm 10
        optimiser.step()

    dreamer = DreamerAgent(DreamerCPUConfig(), IMAGES, spaces.Discrete(4), seed=arguments.seed)
    dreamer_batch = random_batch(arguments.batch, arguments.dreamer_length, spaces.Discrete(4), arguments.seed)
    for _ in range(arguments.warmup):
        token_update()
        dreamer.update(dreamer_batch)
    times = {"tokens": [], "dreamer": []}
    for _ in range(arguments.rounds):
        times["tokens"].append(timed(token_update))
        times["dreamer"].append(timed(lambda: dreamer.update(dreamer_batch)))
    return {
        "size": arguments.size,
        "batch": arguments.batch,
        "length": arguments.length,
        "dreamer_length": arguments.dreamer_length,
        "tokens_parameters": sum(p.numel() for p in model.parameters()),
        "dreamer_parameters": sum(
            p.numel()
            for name, module in dreamer.modules().items()
            if name != "slow_critic"
            for p in module.parameters()
        ),
        "tokens_seconds_per_update_median": round(statistics.median(times["tokens"]), 3),
        "dreamer_cpu_seconds_per_update_median": round(statistics.median(times["dreamer"]), 3),
        "tokens_seconds": [round(t, 3) for t in times["tokens"]],
        "dreamer_seconds": [round(t, 3) for t in times["dreamer"]],
    }


def actor_critic(arguments) -> dict:
    from wmlab.agents.iris.agent import IrisAgent
    from wmlab.agents.iris.config import IrisCPUConfig

    torch.manual_seed(arguments.seed)
    images = spaces.Dict({"image": spaces.Box(0, 255, (16, 16, 3), np.uint8)})
    agent = IrisAgent(IrisCPUConfig(), images, spaces.Discrete(3), seed=arguments.seed)
    batches = {
        starts: random_batch(starts, arguments.length, spaces.Discrete(3), arguments.seed, size=16)
        for starts in arguments.starts
    }
    for _ in range(arguments.warmup):
        for batch in batches.values():
            agent.learner.update(agent.world_model, batch)
    times = {starts: [] for starts in arguments.starts}
    for _ in range(arguments.rounds):
        for starts, batch in batches.items():
            times[starts].append(timed(lambda: agent.learner.update(agent.world_model, batch)))
    medians = {starts: statistics.median(values) for starts, values in times.items()}
    first = arguments.starts[0]
    return {
        "length": arguments.length,
        "horizon": agent.learner.config.horizon,
        "seconds_per_update_median": {str(starts): round(value, 3) for starts, value in medians.items()},
        f"ratio_to_{first}_starts": {
            str(starts): round(value / medians[first], 3) for starts, value in medians.items()
        },
        "seconds": {str(starts): [round(t, 3) for t in values] for starts, values in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["imagine", "step", "update", "actor-critic"])
    parser.add_argument("--size", default="cpu", choices=["tiny", "cpu", "iris"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=10)
    parser.add_argument("--length", type=int, default=10)
    parser.add_argument("--dreamer-length", type=int, default=64)
    parser.add_argument("--starts", type=int, nargs="+", default=[8, 32, 64], help="actor-critic: starts compared")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    commands = {"imagine": imagine, "step": step, "update": update, "actor-critic": actor_critic}
    result = commands[arguments.what](arguments)
    result.update(
        what=arguments.what,
        threads=arguments.threads,
        seed=arguments.seed,
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()

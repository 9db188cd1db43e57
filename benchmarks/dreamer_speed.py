"""Speed of one DreamerV3 training step at SheepRL's "S" size: wmlab against SheepRL (issue 4).

    # once: the separate SheepRL environment (.bench/sheeprl-venv, ignored by git)
    bash benchmarks/sheeprl_setup.sh
    # the measurement (wmlab's venv), alternating wmlab and SheepRL runs
    nice -n 19 .venv/bin/python benchmarks/dreamer_speed.py --obs vectors --threads 1 \
        --sheeprl-python .bench/sheeprl-venv/bin/python --rounds 5 --warmup 2 --repeats 5 \
        --markdown runs/dreamer_speed_vectors_t1.md

What it does:
(a) builds wmlab's DreamerV3 (wmlab.agents.dreamer) with every setting of SheepRL 0.8.4's
    `algo=dreamer_v3_S` set explicitly (`sheeprl_s_config`; the differences that remain are listed in
    `CONFIG_DIFFERENCES` and in the output);
(b) counts the floating-point operations of one update (world model, actor and critic, forward and
    backward) with torch.utils.flop_counter.FlopCounterMode. It counts matrix products (mm, addmm,
    bmm, baddbmm) and convolutions (and their backward) at 2 FLOPs per multiply-add; elementwise
    operations (activations, norms, softmax, optimiser updates, losses) are not counted, so the
    achieved rate is that of the matrix work, which dominates at this size;
(c) measures this machine's float32 matmul peak: the median GFLOP/s of square torch.mm at a few sizes
    with the same thread count, the best size taken as the peak;
(d) times wmlab's update (median over `--repeats` after `--warmup`, in a fresh subprocess) and reports
    seconds per step, achieved GFLOP/s = FLOPs / time, the fraction of the peak, and peak memory (the
    process's peak resident set size, and its rise over the resident size just before the first
    update);
(e) with `--sheeprl-python`, alternates `--rounds` runs of wmlab's step and SheepRL's
    (benchmarks/sheeprl_step_time.py under that python; the order flips every round) and reports the
    median over rounds of the ratio SheepRL seconds / wmlab seconds. SheepRL's FLOPs are counted the
    same way in its first run.

Prints one JSON object; `--markdown FILE` also writes a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from step_timing import add_workload_arguments, complete_workload_arguments, measure_steps

HERE = Path(__file__).resolve().parent

#: What SheepRL's "S" configuration does that wmlab cannot express, or does differently, with the
#: settings of `sheeprl_s_config`. None of them changes the matrix products of the step beyond a
#: bias add or a norm; each is named so that a reader can judge.
CONFIG_DIFFERENCES = [
    "Biases: SheepRL's linear and conv layers that a LayerNorm follows (and its GRU's input linear) have no bias; "
    "wmlab's dense_stack, ConvEncoder/ConvDecoder stages and NormGRUCell always have one (RSSMConfig has no switch). "
    "A few thousand extra parameters; the bias add is fused into addmm or elementwise.",
    "Image decoder (pixels only): SheepRL projects the latent to the 256x4x4 map with a plain Linear; "
    "wmlab's ConvDecoder adds a LayerNorm over the 4096 units and a SiLU after that Linear.",
    "Initial state: SheepRL learns the initial recurrent state (tanh of a parameter) and starts each sequence from it "
    "and from the prior's probabilities of it; wmlab starts from zeros (no parameter, no prior evaluation).",
    "Optimiser implementation: both are Adam with SheepRL's learning rates (1e-4 / 3e-5 / 3e-5), eps (1e-8 / 1e-5 / 1e-5), "
    "betas (0.9, 0.999) and global-norm clipping (1000 / 100 / 100); SheepRL uses torch.optim.Adam(fused=True) and "
    "torch's clip_grad_norm_, wmlab torch.optim.AdamW with weight decay 0 (the same update, foreach implementation) "
    "and its own clipping (which also computes per-tensor norms).",
    "Imagined continuation: SheepRL uses the mode (0 or 1) of the continue head, which carries no gradient; wmlab uses "
    "its probability sigmoid(logit), through which the actor's dynamics gradient also flows (continuous actions): the "
    "backward pass of the continue head over the N x H imagined states, about 30 GFLOP per step. With discrete actions (REINFORCE, no gradient through the imagination) "
    "it costs nothing.",
    "Continuous actor objective (both backpropagate the dynamics only): SheepRL maximises the normalised advantage "
    "(lambda-return minus the critic's baseline), wmlab the normalised lambda-return; SheepRL evaluates the policy "
    "on H + 1 imagined states in the actor loss, wmlab on H. Imagined actions: SheepRL divides them by max(1, |a|) "
    "(stop-gradient) before the recurrent model, wmlab feeds the samples as they are.",
    "Initialisation: SheepRL's Hafner initialisation (variance scaling; zero reward and critic outputs); wmlab's "
    "PyTorch defaults with zero two-hot outputs and actor output scale 1. No effect on compute.",
    "Data layout: SheepRL's batch is sequence-first float32 tensors (T, B, ...); wmlab's is batch-first numpy arrays "
    "(B, T, ...) converted inside the timed update (images stay uint8 until the encoder).",
]


def sheeprl_s_config(actions: str):
    """wmlab's DreamerConfig at SheepRL 0.8.4's `algo=dreamer_v3_S` (every field that matters set here).

    SheepRL S (configs/algo/dreamer_v3_S.yaml on dreamer_v3_XL.yaml): dense_units 512, mlp_layers 2
    (encoder and decoder MLPs, reward, continue, actor, critic), recurrent_state_size 512, recurrent
    dense_units 512, transition / representation hidden 512 with one hidden layer each, stochastic
    32 x 32, unimix 0.01, cnn_channels_multiplier 32 (channels 32, 64, 128, 256; kernel 4, stride 2,
    padding 1), LayerNorm eps 1e-3 everywhere (channel-last for convs), SiLU, a plain GRU cell with a
    LayerNorm over its gates (update bias -1), symlog vector inputs and symlog MSE reconstruction, 255
    two-hot bins for reward and critic, KL dynamic 0.5 / representation 0.1 / free nats 1 per step,
    horizon 15, gamma 1 - 1/333, lambda 0.95, return percentiles 5/95 with decay 0.99 and max 1,
    entropy 3e-4, actor std in [0.1, 1] with sigmoid(raw + 2), target critic tau 0.02 every step with
    a regulariser towards it, objective_mix null (dynamics backpropagation for continuous actions,
    REINFORCE for discrete ones), Adam world model lr 1e-4 eps 1e-8 clip 1000, actor and critic lr
    3e-5 eps 1e-5 clip 100.
    """
    from wmlab.agents.dreamer.config import DreamerConfig
    from wmlab.core.optim import OptimizerConfig
    from wmlab.models.rssm import RSSMConfig, RSSMLossScales, RSSMSizes

    model = RSSMConfig(
        size=RSSMSizes(
            deterministic_size=512,  # recurrent_model.recurrent_state_size
            hidden_size=512,  # recurrent_model.dense_units = transition/representation hidden_size
            classes=32,  # world_model.discrete_size
            cnn_depth=32,  # encoder.cnn_channels_multiplier
            units=512,  # dense_units
        ),
        stochastic_size=32,  # world_model.stochastic_size
        latent="categorical",
        unimix=0.01,  # algo.unimix
        core="gru",  # RecurrentModel: MLP([z, a]) -> LayerNormGRUCell
        gru_norm="layer",  # LayerNorm over the three gates
        prior_layers=1,  # transition_model: one hidden layer
        posterior_layers=1,  # representation_model: one hidden layer on [h, embed]
        norm="layer",  # sheeprl.models.models.LayerNorm / LayerNormChannelLast, eps 1e-3
        activation="silu",  # dense_act / cnn_act torch.nn.SiLU
        cnn_multipliers=(1, 2, 4, 8),  # SheepRL's CNNEncoder: (2 ** i) * multiplier
        cnn_kernel=4,  # kernel 4, stride 2, padding 1
        encoder_layers=2,  # mlp_layers
        decoder_layers=2,
        reward_layers=2,
        continue_layers=2,
        symlog_inputs=True,
        vector_loss="symlog_mse",  # SymlogDistribution
        reward_head="twohot",
        reward_bins=255,  # reward_model.bins
        predict_continue=True,  # discount_model.learnable
        kl_balancing=True,
        free_nats=1.0,  # kl_free_nats, applied per step
        free_nats_average_first=False,
        overshooting_distance=0,
        loss_scales=RSSMLossScales(
            image=1.0, vector=1.0, reward=1.0, continuation=1.0, dynamics=0.5, representation=0.1
        ),
    )
    # Adam (betas 0.9, 0.999, no weight decay, no adaptive clipping, no warm-up: OptimizerConfig's defaults)
    model_optimizer = OptimizerConfig(learning_rate=1e-4, epsilon=1e-8, grad_clip=1000.0)
    behaviour_optimizer = OptimizerConfig(learning_rate=3e-5, epsilon=1e-5, grad_clip=100.0)
    del actions  # both action kinds use the same settings: objective_mix null is reinforce 0 / 1 below
    return DreamerConfig(
        model=model,
        units=512,
        actor_layers=2,
        critic_layers=2,
        continuous_actor="bounded_normal",  # "scaled_normal": Normal(tanh(mean), (max - min) sigmoid(raw + 2) + min)
        actor_min_std=0.1,
        actor_max_std=1.0,
        actor_unimix=0.01,
        actor_output_scale=1.0,
        reinforce_continuous=0.0,  # objective_mix null: dynamics backpropagation for Box actions
        reinforce_discrete=1.0,  # ... and REINFORCE for discrete ones
        entropy_scale=3e-4,
        critic_head="twohot",
        critic_bins=255,
        imagination_horizon=15,
        discount=1 - 1 / 333,  # gamma 0.996996996996997
        return_lambda=0.95,
        horizon_confidence=1.0,
        return_normalization=True,
        return_percentiles=(5.0, 95.0),
        return_normalization_decay=0.99,
        return_scale_limit=1.0,
        critic_targets_from_slow=False,  # values for the lambda-returns from the critic itself
        slow_critic_fraction=0.02,  # critic.tau
        slow_critic_every=1,  # per_rank_target_network_update_freq
        slow_critic_regularizer=1.0,  # critic loss also towards the target critic's prediction
        model_optimizer=model_optimizer,
        actor_optimizer=behaviour_optimizer,
        critic_optimizer=behaviour_optimizer,
        random_steps=0,
        exploration_noise=0.0,
        open_loop_report=False,
        counterfactual_fraction=0.0,
    )


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every measurement (also try 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per run (the run's median)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating wmlab / SheepRL runs (with --sheeprl-python)"
    )
    parser.add_argument(
        "--sheeprl-python", default=None, help="python of the SheepRL venv (benchmarks/sheeprl_setup.sh)"
    )
    parser.add_argument("--sheeprl-script", default=str(HERE / "sheeprl_step_time.py"))
    parser.add_argument("--peak-sizes", default="512,1024,2048", help="square torch.mm sizes for the matmul peak")
    parser.add_argument("--peak-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", default=None, help="also write a markdown table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: time wmlab, print JSON
    arguments = parser.parse_args(argv)
    return complete_workload_arguments(arguments)


# ----------------------------------------------------------------------------------------------
# wmlab's agent and batch


def build_wmlab(arguments: argparse.Namespace):
    """(agent, batch) at the SheepRL S configuration on random data of B x T steps."""
    import numpy as np
    from gymnasium import spaces

    from wmlab.agents.dreamer.agent import DreamerAgent
    from wmlab.core.types import Batch

    config = sheeprl_s_config(arguments.actions)
    if arguments.obs == "pixels":
        observation_space = spaces.Dict({"image": spaces.Box(0, 255, (64, 64, 3), np.uint8)})
    else:
        observation_space = spaces.Dict({"vector": spaces.Box(-np.inf, np.inf, (arguments.vector_size,), np.float32)})
    if arguments.actions == "continuous":
        action_space = spaces.Box(-1.0, 1.0, (arguments.action_size,), np.float32)
    else:
        action_space = spaces.Discrete(arguments.action_size)
    agent = DreamerAgent(config, observation_space, action_space, seed=arguments.seed)

    rng = np.random.default_rng(arguments.seed)
    B, T = arguments.batch, arguments.length
    if arguments.obs == "pixels":
        obs = {"image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)}
    else:
        obs = {"vector": rng.normal(size=(B, T, arguments.vector_size)).astype(np.float32)}
    if arguments.actions == "continuous":
        action = rng.uniform(-1, 1, (B, T, arguments.action_size)).astype(np.float32)
    else:
        action = rng.integers(0, arguments.action_size, (B, T)).astype(np.int64)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    no = np.zeros((B, T), bool)
    batch = Batch(obs, action, rng.normal(size=(B, T)).astype(np.float32), is_first, no, no)
    return agent, batch


def parameter_counts(agent) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in agent.modules().items()
        if name != "slow_critic"
    }


def count_flops(agent, batch) -> dict:
    """FLOPs of one update (forward + backward of world model, actor and critic): in all, by
    operator, and for its two phases (behaviour learning counted by a second counter around
    `learn_behaviour`; the world model is the rest)."""
    from torch.utils.flop_counter import FlopCounterMode

    behaviour = FlopCounterMode(display=False)
    learn_behaviour = agent.learn_behaviour

    def counted_behaviour(*args, **kwargs):
        with behaviour:
            return learn_behaviour(*args, **kwargs)

    agent.learn_behaviour = counted_behaviour
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            agent.update(batch)
    finally:
        del agent.learn_behaviour  # back to the method
    total = int(counter.get_total_flops())
    by_operator = {
        str(op).split(".")[-1] if "." in str(op) else str(op): int(n)
        for op, n in counter.get_flop_counts().get("Global", {}).items()
    }
    behaviour_total = int(behaviour.get_total_flops())
    return {
        "total": total,
        "world_model": total - behaviour_total,
        "behaviour": behaviour_total,
        "by_operator": by_operator,
    }


def time_wmlab(arguments: argparse.Namespace) -> dict:
    """Median seconds per update of wmlab's agent in this process, with its peak memory."""
    import torch

    torch.set_num_threads(arguments.threads)
    agent, batch = build_wmlab(arguments)
    measured = measure_steps(lambda: agent.update(batch), arguments.warmup, arguments.repeats)
    parameters = parameter_counts(agent)
    return {
        "implementation": "wmlab",
        "threads": torch.get_num_threads(),
        "parameters": parameters,
        "parameters_total": sum(parameters.values()),
        **measured,
    }


# ----------------------------------------------------------------------------------------------
# The machine's matmul peak


def matmul_peak(threads: int, sizes: list[int], repeats: int) -> dict:
    """Median GFLOP/s of float32 torch.mm (n x n times n x n, 2 n^3 FLOPs) per size; the best is the peak."""
    import torch

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, generator=generator)
        b = torch.randn(n, n, generator=generator)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            seconds.append(time.perf_counter() - start)
        rates[n] = 2 * n**3 / statistics.median(seconds) / 1e9
    best = max(rates, key=rates.get)
    return {
        "threads": threads,
        "gflops_by_size": {str(n): round(r, 2) for n, r in rates.items()},
        "peak_gflops": round(rates[best], 2),
        "peak_size": best,
    }


# ----------------------------------------------------------------------------------------------
# Runs in subprocesses


def subprocess_environment(threads: int) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"})
    return environment


def last_json_line(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{output[-2000:]}")


def common_flags(arguments: argparse.Namespace) -> list[str]:
    return [
        "--obs",
        arguments.obs,
        "--vector-size",
        str(arguments.vector_size),
        "--actions",
        arguments.actions,
        "--action-size",
        str(arguments.action_size),
        "--batch",
        str(arguments.batch),
        "--length",
        str(arguments.length),
        "--threads",
        str(arguments.threads),
        "--warmup",
        str(arguments.warmup),
        "--repeats",
        str(arguments.repeats),
        "--seed",
        str(arguments.seed),
    ]


def run_json(command: list[str], threads: int) -> dict:
    completed = subprocess.run(command, capture_output=True, text=True, env=subprocess_environment(threads))
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return last_json_line(completed.stdout)


def run_wmlab_worker(arguments: argparse.Namespace) -> dict:
    return run_json(
        [sys.executable, str(Path(__file__).resolve()), "--worker", *common_flags(arguments)], arguments.threads
    )


def run_sheeprl(arguments: argparse.Namespace, count_flops_too: bool) -> dict:
    command = [arguments.sheeprl_python, arguments.sheeprl_script, *common_flags(arguments)]
    if count_flops_too:
        command.append("--count-flops")
    return run_json(command, arguments.threads)


# ----------------------------------------------------------------------------------------------
# Report


def rate_fields(flops: int | None, seconds: float | None, peak_gflops: float) -> dict:
    if not flops or not seconds:
        return {"achieved_gflops": None, "fraction_of_peak": None}
    achieved = flops / seconds / 1e9
    return {"achieved_gflops": round(achieved, 2), "fraction_of_peak": round(achieved / peak_gflops, 4)}


def markdown_table(result: dict) -> str:
    wm, sh = result["wmlab"], result.get("sheeprl")
    peak = result["matmul_peak"]

    def cell(run: dict | None, key: str, scale: float = 1.0, digits: int = 3) -> str:
        if run is None or run.get(key) is None:
            return "-"
        value = run[key]
        if isinstance(value, int) and scale == 1.0:
            return f"{value:,}"
        return f"{value * scale:,.{digits}f}"

    lines = [
        f"DreamerV3 at SheepRL's S size, {result['obs']}, {result['actions']} actions, batch {result['batch']} x {result['length']}, "
        f"{result['threads']} thread(s); torch {result['torch_version']}.",
        "",
        "| | wmlab | SheepRL |",
        "| --- | ---: | ---: |",
        f"| seconds per step (median of run medians) | {cell(wm, 'seconds_per_step_median')} | {cell(sh, 'seconds_per_step_median')} |",
        f"| GFLOP per step (matmul + conv, fwd + bwd) | {cell(wm, 'flops_per_step', 1e-9, 1)} | {cell(sh, 'flops_per_step', 1e-9, 1)} |",
        f"| of which world-model learning | {cell(wm, 'flops_world_model', 1e-9, 1)} | {cell(sh, 'flops_world_model', 1e-9, 1)} |",
        f"| of which behaviour learning (imagination, actor, critic) | {cell(wm, 'flops_behaviour', 1e-9, 1)} | {cell(sh, 'flops_behaviour', 1e-9, 1)} |",
        f"| achieved GFLOP/s | {cell(wm, 'achieved_gflops', 1.0, 1)} | {cell(sh, 'achieved_gflops', 1.0, 1)} |",
        f"| % of matmul peak ({peak['peak_gflops']:.1f} GFLOP/s) | {cell(wm, 'fraction_of_peak', 100.0, 1)} | {cell(sh, 'fraction_of_peak', 100.0, 1)} |",
        f"| peak RSS of the process (MiB) | {cell(wm, 'peak_rss_mib', 1.0, 0)} | {cell(sh, 'peak_rss_mib', 1.0, 0)} |",
        f"| rise of peak RSS during the steps (MiB) | {cell(wm, 'step_peak_rss_increase_mib', 1.0, 0)} | {cell(sh, 'step_peak_rss_increase_mib', 1.0, 0)} |",
        f"| parameters (world model + actor + critic) | {cell(wm, 'parameters_total')} | {cell(sh, 'parameters_total')} |",
        "",
        f"Matmul peak: float32 torch.mm GFLOP/s by size {peak['gflops_by_size']} (best size {peak['peak_size']}).",
    ]
    if result.get("speedup_median") is not None:
        lines.append(
            f"Speed-up SheepRL / wmlab: median {result['speedup_median']:.2f}x over {len(result['speedup_by_round'])} alternating rounds "
            f"({', '.join(f'{r:.2f}' for r in result['speedup_by_round'])}); target >= 1.3x: {'met' if result['meets_speed_target'] else 'not met'}."
        )
    if wm.get("fraction_of_peak") is not None:
        lines.append(f"wmlab fraction of peak target >= 60 %: {'met' if result['meets_peak_target'] else 'not met'}.")
    lines += ["", "Remaining configuration differences:", ""] + [f"- {item}" for item in result["config_differences"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    arguments = parse_arguments()
    if arguments.worker:
        print(json.dumps(time_wmlab(arguments)))
        return

    import torch

    torch.set_num_threads(arguments.threads)
    peak = matmul_peak(arguments.threads, [int(n) for n in arguments.peak_sizes.split(",")], arguments.peak_repeats)

    agent, batch = build_wmlab(arguments)
    flops = count_flops(agent, batch)
    del agent, batch

    wmlab_runs, sheeprl_runs, ratios = [], [], []
    rounds = arguments.rounds if arguments.sheeprl_python else 1
    for index in range(rounds):
        order = ["wmlab", "sheeprl"] if index % 2 == 0 else ["sheeprl", "wmlab"]
        if not arguments.sheeprl_python:
            order = ["wmlab"]
        for name in order:
            if name == "wmlab":
                wmlab_runs.append(run_wmlab_worker(arguments))
            else:
                sheeprl_runs.append(run_sheeprl(arguments, count_flops_too=index == 0))
            print(
                f"round {index + 1}/{rounds} {name}: {(wmlab_runs if name == 'wmlab' else sheeprl_runs)[-1]['seconds_per_step_median']} s",
                file=sys.stderr,
            )
        if arguments.sheeprl_python:
            ratios.append(sheeprl_runs[-1]["seconds_per_step_median"] / wmlab_runs[-1]["seconds_per_step_median"])

    def summarise(
        runs: list[dict], flops_total: int | None, flops_world_model: int | None, flops_behaviour: int | None
    ) -> dict:
        seconds = statistics.median(run["seconds_per_step_median"] for run in runs)
        summary = {
            "seconds_per_step_median": round(seconds, 4),
            "seconds_per_step_by_run": [run["seconds_per_step_median"] for run in runs],
            "flops_per_step": flops_total,
            "flops_world_model": flops_world_model,
            "flops_behaviour": flops_behaviour,
            "peak_rss_mib": max(run["peak_rss_mib"] for run in runs),
            "step_peak_rss_mib": max((run.get("step_peak_rss_mib") or 0) for run in runs) or None,
            "step_peak_rss_increase_mib": max(run["step_peak_rss_increase_mib"] for run in runs),
            "parameters": runs[0]["parameters"],
            "parameters_total": runs[0]["parameters_total"],
        }
        summary.update(rate_fields(flops_total, seconds, peak["peak_gflops"]))
        return summary

    result = {
        "obs": arguments.obs,
        "actions": arguments.actions,
        "action_size": arguments.action_size,
        "vector_size": arguments.vector_size if arguments.obs == "vectors" else None,
        "batch": arguments.batch,
        "length": arguments.length,
        "threads": arguments.threads,
        "warmup": arguments.warmup,
        "repeats": arguments.repeats,
        "torch_version": torch.__version__,
        "matmul_peak": peak,
        "wmlab": summarise(wmlab_runs, flops["total"], flops["world_model"], flops["behaviour"]),
        "wmlab_flops_by_operator": flops["by_operator"],
    }
    if arguments.sheeprl_python:
        first = sheeprl_runs[0]
        result["sheeprl"] = summarise(
            sheeprl_runs, first.get("flops_per_step"), first.get("flops_world_model"), first.get("flops_behaviour")
        )
        result["sheeprl"]["version"] = sheeprl_runs[0].get("sheeprl_version")
        result["sheeprl"]["overrides"] = sheeprl_runs[0].get("overrides")
        result["speedup_by_round"] = [round(r, 3) for r in ratios]
        result["speedup_median"] = round(statistics.median(ratios), 3)
        result["meets_speed_target"] = result["speedup_median"] >= 1.3
    fraction = result["wmlab"]["fraction_of_peak"]
    result["meets_peak_target"] = fraction is not None and fraction >= 0.6
    result["config_differences"] = CONFIG_DIFFERENCES
    print(json.dumps(result))
    if arguments.markdown:
        Path(arguments.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.markdown).write_text(markdown_table(result))


if __name__ == "__main__":
    main()

"""Wall time of one SheepRL DreamerV3 training step on random data (runs INSIDE the SheepRL venv).

    bash benchmarks/sheeprl_setup.sh
    nice -n 19 .bench/sheeprl-venv/bin/python benchmarks/sheeprl_step_time.py --obs vectors --threads 1

The step is SheepRL's own code path: the models come from `sheeprl.algos.dreamer_v3.agent.build_agent`,
the optimisers from the config through `hydra.utils.instantiate` and `fabric.setup_optimizers`, and
each timed step is what the loop of `sheeprl.algos.dreamer_v3.dreamer_v3.main` does per gradient
step: the target-critic update (tau 0.02, every step) followed by
`sheeprl.algos.dreamer_v3.dreamer_v3.train` (world-model update, imagination of horizon 15 from
every posterior state, actor update, critic update). Only the replay buffer and the environments are
replaced: a fabricated batch of the layout that `sample_batches` yields (float32 tensors of shape
(T, B, ...): observations, actions, rewards, terminated, truncated, is_first).

Settings (everything not listed is SheepRL's `exp=dreamer_v3`, i.e. `algo=dreamer_v3_S`, batch 16 x 64):
- config composed with Hydra from the installed package: `exp=dreamer_v3 env=dummy`, the keys of the
  fabricated observations as the encoder's and the decoder's `algo.cnn_keys` / `algo.mlp_keys`
  (every observation is encoded and reconstructed), model manager off;
- `lightning.fabric.Fabric(accelerator="cpu", devices=1, precision="32-true")` (the config's fabric);
- `torch.distributions.Distribution.set_default_validate_args(False)` and
  `torch.set_float32_matmul_precision("high")`, as SheepRL's CLI does (`distribution.validate_args`,
  `float32_matmul_precision`);
- the metric aggregator as the CLI builds it at the default `metric.log_level=1` (so the entropies of
  posterior and prior are computed as in a real run); `--no-metrics` turns it off (log_level 0);
- `algo.compile.enabled=False` (SheepRL's default);
- observations: vectors "state" of `--vector-size` floats, or "rgb" images (3, 64, 64) uint8 values
  as floats; actions: `--action-size` continuous dimensions in [-1, 1] (SheepRL's default actor for
  Box actions: scaled normal, trained by backpropagating the dynamics, `objective_mix: null`) or
  `--actions discrete` (one-hot, REINFORCE); every sequence starts an episode (SheepRL sets
  is_first[0] = 1 itself), no terminations.

Prints one JSON line: median / min seconds per step, parameter counts, peak memory (the process's
peak resident set size, and the rise of that peak over the resident size just before the first
step), and with `--count-flops` the floating-point operations of one extra step counted by
`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions, forward and backward;
elementwise operations are not counted), in all and for its two phases (world-model learning,
behaviour learning).
"""

from __future__ import annotations

import argparse
import json
import warnings

from step_timing import add_workload_arguments, complete_workload_arguments, measure_steps


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_arguments(parser)
    parser.add_argument(
        "--algo", default="dreamer_v3_S", help="SheepRL algo config (size): dreamer_v3_XS, dreamer_v3_S, ..."
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-metrics", action="store_true", help="metric.log_level=0: no aggregator, no entropy metrics"
    )
    parser.add_argument("--count-flops", action="store_true", help="count the FLOPs of one extra step (not timed)")
    arguments = parser.parse_args()
    return complete_workload_arguments(arguments)


def compose_config(arguments: argparse.Namespace):
    """SheepRL's configuration as its CLI builds it (Hydra compose, resolved into a dotdict)."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from sheeprl.utils.utils import dotdict

    cnn_keys = ["rgb"] if arguments.obs == "pixels" else []
    mlp_keys = ["state"] if arguments.obs == "vectors" else []
    overrides = [
        "exp=dreamer_v3",
        f"algo={arguments.algo}",
        "env=dummy",
        f"algo.cnn_keys.encoder=[{','.join(cnn_keys)}]",
        f"algo.mlp_keys.encoder=[{','.join(mlp_keys)}]",
        f"algo.cnn_keys.decoder=[{','.join(cnn_keys)}]",
        f"algo.mlp_keys.decoder=[{','.join(mlp_keys)}]",
        f"algo.per_rank_batch_size={arguments.batch}",
        f"algo.per_rank_sequence_length={arguments.length}",
        "model_manager.disabled=True",
        "fabric.accelerator=cpu",
        f"num_threads={arguments.threads}",
        f"seed={arguments.seed}",
        f"metric.log_level={0 if arguments.no_metrics else 1}",
    ]
    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        config = compose(config_name="config", overrides=overrides)
    return dotdict(OmegaConf.to_container(config, resolve=True, throw_on_missing=True)), overrides


def main() -> None:
    arguments = parse_arguments()
    warnings.filterwarnings("ignore")
    import gymnasium as gym
    import hydra
    import numpy as np
    import sheeprl
    import torch
    from lightning.fabric import Fabric
    from sheeprl.algos.dreamer_v3 import utils as dreamer_utils
    from sheeprl.algos.dreamer_v3.agent import build_agent
    from sheeprl.algos.dreamer_v3.dreamer_v3 import train
    from sheeprl.algos.dreamer_v3.utils import Moments
    from sheeprl.utils.metric import MetricAggregator
    from torch.distributions import Distribution

    torch.set_num_threads(arguments.threads)
    config, overrides = compose_config(arguments)
    # What SheepRL's CLI (sheeprl.cli.run_algorithm) sets before the algorithm starts.
    torch.set_float32_matmul_precision(config.float32_matmul_precision)
    Distribution.set_default_validate_args(config.distribution.validate_args)
    keys_to_remove = set(config.metric.aggregator.metrics.keys()) - dreamer_utils.AGGREGATOR_KEYS
    for key in keys_to_remove:
        config.metric.aggregator.metrics.pop(key, None)
    MetricAggregator.disabled = config.metric.log_level == 0 or len(config.metric.aggregator.metrics) == 0

    fabric = Fabric(accelerator="cpu", devices=1, num_nodes=1, precision=config.fabric.precision)
    fabric.seed_everything(config.seed)

    B, T = arguments.batch, arguments.length
    if arguments.obs == "pixels":
        observation_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)})
    else:
        observation_space = gym.spaces.Dict(
            {"state": gym.spaces.Box(-np.inf, np.inf, (arguments.vector_size,), np.float32)}
        )
    is_continuous = arguments.actions == "continuous"
    actions_dim = (arguments.action_size,)

    world_model, actor, critic, target_critic, player = build_agent(
        fabric, actions_dim, is_continuous, config, observation_space
    )
    world_optimizer = hydra.utils.instantiate(
        config.algo.world_model.optimizer, params=world_model.parameters(), _convert_="all"
    )
    actor_optimizer = hydra.utils.instantiate(config.algo.actor.optimizer, params=actor.parameters(), _convert_="all")
    critic_optimizer = hydra.utils.instantiate(
        config.algo.critic.optimizer, params=critic.parameters(), _convert_="all"
    )
    world_optimizer, actor_optimizer, critic_optimizer = fabric.setup_optimizers(
        world_optimizer, actor_optimizer, critic_optimizer
    )
    moments = Moments(
        config.algo.actor.moments.decay,
        config.algo.actor.moments.max,
        config.algo.actor.moments.percentile.low,
        config.algo.actor.moments.percentile.high,
    )
    aggregator = None
    if not MetricAggregator.disabled:
        aggregator = hydra.utils.instantiate(config.metric.aggregator, _convert_="all").to(fabric.device)
    parameters = {
        "world_model": sum(p.numel() for p in world_model.parameters()),
        "actor": sum(p.numel() for p in actor.parameters()),
        "critic": sum(p.numel() for p in critic.parameters()),
    }

    # The batch that `sample_batches` yields: float32 tensors (T, B, ...).
    generator = torch.Generator().manual_seed(arguments.seed)
    if arguments.obs == "pixels":
        observations = {"rgb": torch.randint(0, 256, (T, B, 3, 64, 64), generator=generator).float()}
    else:
        observations = {"state": torch.randn(T, B, arguments.vector_size, generator=generator)}
    if is_continuous:
        actions = torch.rand(T, B, arguments.action_size, generator=generator) * 2 - 1
    else:
        actions = torch.nn.functional.one_hot(
            torch.randint(0, arguments.action_size, (T, B), generator=generator), arguments.action_size
        ).float()
    batch = {
        **observations,
        "actions": actions,
        "rewards": torch.randn(T, B, 1, generator=generator),
        "terminated": torch.zeros(T, B, 1),
        "truncated": torch.zeros(T, B, 1),
        "is_first": torch.zeros(T, B, 1),
    }
    batch["is_first"][0] = 1

    gradient_steps = 0

    def one_step() -> None:
        """One gradient step as the loop of sheeprl.algos.dreamer_v3.dreamer_v3.main does it."""
        nonlocal gradient_steps
        if gradient_steps % config.algo.critic.per_rank_target_network_update_freq == 0:
            tau = 1 if gradient_steps == 0 else config.algo.critic.tau
            for critic_parameter, target_parameter in zip(critic.module.parameters(), target_critic.parameters()):
                target_parameter.data.copy_(tau * critic_parameter.data + (1 - tau) * target_parameter.data)
        data = {key: value.clone() for key, value in batch.items()}  # train() writes into is_first
        train(
            fabric,
            world_model,
            actor,
            critic,
            target_critic,
            world_optimizer,
            actor_optimizer,
            critic_optimizer,
            data,
            aggregator,
            config,
            is_continuous,
            actions_dim,
            moments,
        )
        gradient_steps += 1

    measured = measure_steps(one_step, arguments.warmup, arguments.repeats)

    flops = flops_world_model = flops_behaviour = None
    if arguments.count_flops:
        from sheeprl.algos.dreamer_v3 import dreamer_v3
        from torch.utils.flop_counter import FlopCounterMode

        # train() looks its two phases up in its module at call time: count each with its own
        # counter inside the one of the whole step.
        counters = {
            "world_model_learning": FlopCounterMode(display=False),
            "behaviour_learning": FlopCounterMode(display=False),
        }
        originals = {name: getattr(dreamer_v3, name) for name in counters}

        def counted(name):
            def phase(*args, **kwargs):
                with counters[name]:
                    return originals[name](*args, **kwargs)

            return phase

        for name in counters:
            setattr(dreamer_v3, name, counted(name))
        counter = FlopCounterMode(display=False)
        try:
            with counter:
                one_step()
        finally:
            for name, function in originals.items():
                setattr(dreamer_v3, name, function)
        flops = counter.get_total_flops()
        flops_world_model = counters["world_model_learning"].get_total_flops()
        flops_behaviour = counters["behaviour_learning"].get_total_flops()

    print(
        json.dumps(
            {
                "implementation": "sheeprl",
                "sheeprl_version": sheeprl.__version__,
                "torch_version": torch.__version__,
                "algo": arguments.algo,
                "obs": arguments.obs,
                "actions": arguments.actions,
                "action_size": arguments.action_size,
                "batch": B,
                "length": T,
                "threads": torch.get_num_threads(),
                "metrics": not MetricAggregator.disabled,
                "overrides": overrides,
                "parameters": parameters,
                "parameters_total": sum(parameters.values()),
                "warmup": arguments.warmup,
                "repeats": arguments.repeats,
                **measured,
                "flops_per_step": flops,
                "flops_world_model": flops_world_model,
                "flops_behaviour": flops_behaviour,
            }
        )
    )


if __name__ == "__main__":
    main()
